"""The data layer: files on disk (`loaders`), the synthetic FedProx benchmark (`synthetic`), seeded
partitioners (`partition`), and the federated data set the engines read (`federated`, built by
`datasets.federate` / `datasets.from_user_data`). Nothing is ever downloaded."""
from thinwire.data.datasets import federate, from_user_data
from thinwire.data.federated import FederatedDataset

__all__ = ["FederatedDataset", "federate", "from_user_data"]
