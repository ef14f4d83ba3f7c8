"""The networks: tensors in, logits out.

Owns the registry of ImageNet backbones (``backbones``), the classifier with medxfer's head
(``classifier``), domain-adaptation layers (``adaptation``), fine-tuning strategies and
learning-rate groups (``finetune``) and the frozen-prefix split (``prefix``). Imports only
``medxfer.transforms`` (input preparation metadata); nothing else from ``medxfer.pipeline``.
"""
