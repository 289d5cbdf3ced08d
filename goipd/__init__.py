"""goipd: fleet controller for GoIP GSM gateways."""

__version__ = "0.1.0"
