"""The application layer: what operators do (`core.Operations`), the JSON shapes it answers
(`views`), feed cursors (`feed`) and the commands' reports (`commands`)."""
