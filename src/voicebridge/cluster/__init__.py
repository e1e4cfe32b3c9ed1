"""Many nodes: the shared call state in Redis (:mod:`.store`), this process as one node
(:mod:`.node`), and what the app does with them (:mod:`.service`)."""
