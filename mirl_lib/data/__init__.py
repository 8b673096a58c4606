"""Floor 2: the data: photos, the sources' catalogues, degradations, the test set, the streamed
training batches and the held-out check."""
