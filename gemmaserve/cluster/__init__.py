"""Many replicas behind one OpenRouter endpoint: routing with provider semantics on Ray Serve."""
