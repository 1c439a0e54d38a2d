"""The method and the model: CAPL math, network, classifier from shots, frame -> labels. No sockets."""
