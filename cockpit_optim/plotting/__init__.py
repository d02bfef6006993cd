"""The cockpit view (matplotlib, explicit Figure objects, no global pyplot state)."""
