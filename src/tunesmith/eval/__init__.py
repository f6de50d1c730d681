"""The eval stage: score model outputs against references and aggregate the scores."""
