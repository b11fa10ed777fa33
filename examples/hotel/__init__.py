"""The hotel platform (shared/seeds 000): six tiers, four pools, OTPs under load, a redrive, a broker restart."""
