"""Triton kernels of flashtron and the launcher that sizes their grids."""
