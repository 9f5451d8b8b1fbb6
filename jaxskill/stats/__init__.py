"""Statistics over the activations: the streaming Pearson correlator, significance, selection of neurons, densities, the learning test and the metric checks."""
