"""Teacher and student backbones behind one interface."""
