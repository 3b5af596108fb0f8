"""Analytics: detectors that find plant faults early, streaming and batch jobs, and honest scoring."""
