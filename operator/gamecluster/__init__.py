"""GameCluster operator: runs relay fleets and their Redis from one custom resource."""

__version__ = "0.1.0"
