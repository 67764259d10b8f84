"""Lightning callbacks: frequency-aware timesteps, sample logging, checkpoint export."""
