"""Federated learning from first principles: FedAvg of the digits MLP across simulated clients.

numpy and scratch/nn only (no torch, no Flower); see docs/federated.md and
`python -m scratch.federated --help`.
"""
