"""Model Spider for a zoo of Large Language Models on public leaderboard scores (`llm.data`)."""
