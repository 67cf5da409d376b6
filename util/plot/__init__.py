"""Pictures for people: diagrams, labels, filters, training curves and the quickstart's summary page."""
