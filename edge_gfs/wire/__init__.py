"""What crosses the network: message types and codecs (no torch), and the client library."""
