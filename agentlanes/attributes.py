"""Every span and event attribute name agentlanes writes, in one place.

GenAI names mirror OpenTelemetry's semantic conventions (``gen_ai.*``, pinned here as
strings so an upgrade of ``opentelemetry-semantic-conventions`` cannot rename them
under a stored trace; a test checks them against that package). agentlanes' own
attributes are under ``agentlanes.*``.
"""

from __future__ import annotations

from typing import Final

# --- GenAI semantic conventions -------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"
GEN_AI_WORKFLOW_NAME: Final = "gen_ai.workflow.name"
GEN_AI_EVALUATION_NAME: Final = "gen_ai.evaluation.name"
GEN_AI_EVALUATION_SCORE_LABEL: Final = "gen_ai.evaluation.score.label"
GEN_AI_EVALUATION_EXPLANATION: Final = "gen_ai.evaluation.explanation"
ERROR_TYPE: Final = "error.type"

OP_CHAT: Final = "chat"
OP_INVOKE_WORKFLOW: Final = "invoke_workflow"
OP_EXECUTE_TOOL: Final = "execute_tool"
EVENT_EVALUATION_RESULT: Final = "gen_ai.evaluation.result"

# --- agentlanes -----------------------------------------------------------------
TRACE_SCHEMA: Final = "agentlanes.trace.schema"
RUN_ID: Final = "agentlanes.run.id"
RUN_STATUS: Final = "agentlanes.run.status"
RUN_INPUT_DIGEST: Final = "agentlanes.run.input.digest"
STEP: Final = "agentlanes.step"
"""Order of a recorded step within its run (decisions, calls, verifier results, escalations)."""
ERROR_RETRYABLE: Final = "agentlanes.error.retryable"
APPROVER: Final = "agentlanes.approval.approver"
CHAIN_REF: Final = "agentlanes.chain.ref"
TASK_CLASS: Final = "agentlanes.task_class"
RISK_CLASS: Final = "agentlanes.risk_class"
STAGE: Final = "agentlanes.stage"
STAGE_NAME: Final = "agentlanes.stage.name"
STAGE_PARENT: Final = "agentlanes.stage.parent"
STAGE_STATUS: Final = "agentlanes.stage.status"
STAGE_ATTEMPTS: Final = "agentlanes.stage.attempts"
LANE: Final = "agentlanes.lane"
DECISION_ID: Final = "agentlanes.decision.id"
DECISION_STATUS: Final = "agentlanes.decision.status"
DECISION_REASON: Final = "agentlanes.decision.reason"
CANDIDATES_REJECTED: Final = "agentlanes.candidates.rejected"
COST_ESTIMATED: Final = "agentlanes.cost.estimated"
COST_ACTUAL: Final = "agentlanes.cost.actual"
COST_RESERVED: Final = "agentlanes.cost.reserved"
BUDGET_REMAINING: Final = "agentlanes.budget.window_remaining"
PROMPT_DIGEST: Final = "agentlanes.prompt.digest"
OUTPUT_DIGEST: Final = "agentlanes.output.digest"
ERROR_DIGEST: Final = "agentlanes.error.digest"
ATTEMPT: Final = "agentlanes.attempt"
VERIFIER_EXIT_STATUS: Final = "agentlanes.verifier.exit_status"
VERIFIER_KIND: Final = "agentlanes.verifier.kind"
RECEIPT_ID: Final = "agentlanes.receipt.id"
RECEIPT_DIGEST: Final = "agentlanes.receipt.digest"
FROM_LANE: Final = "agentlanes.escalation.from_lane"
TO_LANE: Final = "agentlanes.escalation.to_lane"
ESCALATION_REASON: Final = "agentlanes.escalation.reason"
EVENT_DECISION: Final = "agentlanes.route_decision"
EVENT_ESCALATION: Final = "agentlanes.escalation"
# the inputs of a decision, recorded with it so that it can be re-decided offline
REQUEST: Final = "agentlanes.request"
"""Canonical JSON of the route request (names, budget, exclusions, signals); no content."""
DOCUMENTS: Final = "agentlanes.documents"
