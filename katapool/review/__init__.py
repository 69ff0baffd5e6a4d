"""Game review: every move of a game analysed, with winrate, score and mistakes."""
