"""Floor 6: what a finished study says: statistics, means, comparisons, the dense network's gains,
the headline, the summary page, the reproduction check and the figures."""
