"""Probes: threshold A/Bs and profilers that set or explain one constant of the kernel policy."""
