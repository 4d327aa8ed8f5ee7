"""The stages of a cycle, each a function from typed artifacts to a typed artifact."""
