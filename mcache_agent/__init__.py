"""mcache agent: loads the in-kernel memcached cache and applies versioned configs."""

__version__ = "0.1.0"
