import torch, math, time
from flashtron.kernels import launch
def ref(q,k,v,scale,wl,wr):
    q,k,v=[t.double() for t in (q,k,v)]
    B,Sq,H,D=q.shape; Sk,Hk=k.shape[1],k.shape[2]; g=H//Hk
    k=k.repeat_interleave(g,2); v=v.repeat_interleave(g,2)
    s=torch.einsum('bqhd,bkhd->bhqk',q,k)*scale
    i=torch.arange(Sq,device=q.device)[:,None]; j=torch.arange(Sk,device=q.device)[None,:]; d=j-i-(Sk-Sq)
    keep=torch.ones(Sq,Sk,dtype=torch.bool,device=q.device)
    if wl>=0: keep&=d>=-wl
    if wr>=0: keep&=d<=wr
    s=s.masked_fill(~keep,-math.inf)
    lse=torch.logsumexp(s,-1)
    p=torch.exp(s-lse[...,None]).nan_to_num(0)
    return torch.einsum('bhqk,bkhd->bqhd',p,v),lse
torch.manual_seed(0)
for dt in [torch.float32, torch.float16, torch.bfloat16]:
  for (Sq,Sk,H,Hk,D,wr) in [(137,253,4,2,40,-1),(253,137,2,1,64,0),(517,517,3,3,128,0),(300,200,2,2,256,-1),(1000,1000,2,1,96,0),(64,64,2,2,1,0)]:
    q=torch.randn(2,Sq,H,D,dtype=dt,device='cuda'); k=torch.randn(2,Sk,Hk,D,dtype=dt,device='cuda'); v=torch.randn(2,Sk,Hk,D,dtype=dt,device='cuda'); do=torch.randn_like(q)
    t=time.time()
    o,lse=launch.forward(q,k,v,D**-0.5,-1,wr,False)
    dq,dk,dv=launch.backward(do,q,k,v,o,lse,D**-0.5,-1,wr,False)
    torch.cuda.synchronize()
    qq,kk,vv=[x.double().requires_grad_() for x in (q,k,v)]
    ro,rl=ref(qq,kk,vv,D**-0.5,-1,wr); ro.backward(do.double())
    print(dt,Sq,Sk,D,f"{time.time()-t:.1f}s out {(o.double()-ro).abs().max().item():.2e}",[f"{(a.double()-b.grad).abs().max().item():.2e}" for a,b in ((dq,qq),(dk,kk),(dv,vv))],flush=True)
