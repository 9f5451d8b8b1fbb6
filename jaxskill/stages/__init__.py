"""The pipeline's stages, in order: train (the soft prompt), find (the correlations), verify (the ablations); the report is drawn by `jaxskill.report.page`."""
