"""OpenFlow: the one rule builder (tables, cookies, priorities), wire parsing, frames, and the framework shim."""
