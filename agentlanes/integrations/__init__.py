"""Agent frameworks on lanes: each framework's own model interface, answered by the
stage's lane.

* :mod:`agentlanes.integrations.pydantic_ai`: ``LaneModel(ctx)``, a PydanticAI model
  (``pip install 'agentlanes[pydantic-ai]'``);
* :mod:`agentlanes.integrations.openai_agents`: ``LaneModelProvider(ctx)``, an OpenAI
  Agents SDK model provider (``pip install 'agentlanes[openai-agents]'``);
* :mod:`agentlanes.integrations.temporal`: ``AgentLanesPlugin(lanes, loops=...)``, loops
  as durable Temporal workflows (``pip install 'agentlanes[temporal]'``).

Nothing here is imported by ``import agentlanes``: each module imports its framework
when it is itself imported.
"""
