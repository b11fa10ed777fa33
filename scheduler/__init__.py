"""The periodic scheduler: its own process, turning declared cron schedules into outbox jobs."""
