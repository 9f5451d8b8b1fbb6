"""The report page of a run directory: its data, figures and the neuron browser."""
