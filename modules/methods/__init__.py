"""One home per method: Tune-A-Video, Video-P2P, MotionDirector, Dreamix, EI²; each uses only the shared packages."""
