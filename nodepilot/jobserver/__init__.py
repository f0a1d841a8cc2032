"""The local job server (`nodepilot serve`): a PanDA server stand-in for demos, tests and standalone sites."""
