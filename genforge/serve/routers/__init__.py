"""One router per task (plus the models list and the playground); genforge/serve/tasks.py
says which router serves which recipe TASK."""
