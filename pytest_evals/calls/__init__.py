"""Model calls: ``model`` (the object behind the ``model`` and ``judge`` fixtures), ``planner`` (a window's
calls gathered into batched backend calls), ``pool`` (loaded backends), ``cache`` (the call cache),
``reliability`` (retries, circuit breaker), ``metering`` (prices), ``conversation`` (chat history and the
tool loop), ``routing`` (which backend serves a task), ``sampling`` (repeated samples). No pytest hooks."""
