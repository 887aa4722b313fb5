"""pulld, the agent on every server: makes the server match its `server/{server}.json`.

`Agent.step()` is one converge step: `plan.plan()` decides (pure), `executor.Executor`
acts, `report.build()` reports (pure), `publisher.Publisher` writes the report, and
`recovery.recover()` runs first after a crash. `main()` is the `pulld` command (triggers,
metrics, the loop). See docs/pulld.md.
"""

from push.agent.agent import Agent, AgentOptions

__all__ = ["Agent", "AgentOptions"]
