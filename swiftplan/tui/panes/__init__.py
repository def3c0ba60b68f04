"""The dashboard's five tabs: hardware, job, search, plan, run."""
