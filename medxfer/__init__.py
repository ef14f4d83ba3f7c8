"""medxfer: transfer learning for small X-ray datasets that a reviewer can trust."""

__version__ = "0.1.0"
