"""Fault injection against real processes (issue 7): restarts, crashes, failover, storms."""
