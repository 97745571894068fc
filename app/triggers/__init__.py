"""How an event becomes a run: GitHub webhook intake and handling (`deliveries`), Actions' filters
(`matching`, `patterns`), event text for the model (`event_text`), cron schedules (`schedules`),
review follow-ups (`followups`), firing a run once (`dispatch`), redelivery sweeps (`recovery`) and
the acknowledgement on GitHub (`tracking`).
"""
