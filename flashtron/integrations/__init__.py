"""Bridges from other frameworks to flashtron's attention.

`flashtron.integrations.transformers.register()` adds "ftron" to Hugging Face Transformers'
attention implementations; Keras 3 lives in `flashtron.keras`.  Nothing here is imported by
`import flashtron`, and each bridge imports its framework only when used.
"""
