"""The model's own small tokenizer (byte-level BPE, every digit a single token) and its chat template."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
IMAGE = "<image>"
FAKE_IMAGE = "<fake_token_around_image>"
GLOBAL_IMAGE = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
# Tile tags the Idefics3 processor looks up; unused (no image splitting) but kept so lookups succeed.
ROW_COL = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]

SPECIAL = [PAD, IM_START, IM_END, IMAGE, FAKE_IMAGE, GLOBAL_IMAGE, END_OF_UTTERANCE, *ROW_COL]
# Like Qwen3, <think> and </think> are single added tokens that are NOT skipped when decoding, so the
# engine's reasoning parser sees them in the text as well as in the ids.
THINK_TOKENS = [THINK_START, THINK_END]
# The Hermes/Qwen3 tool-call markers: single tokens too (vLLM's `hermes` parser reads them as text).
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_START, TOOL_RESPONSE_END = "<tool_response>", "</tool_response>"
TOOL_TOKENS = [TOOL_CALL_START, TOOL_CALL_END, TOOL_RESPONSE_START, TOOL_RESPONSE_END]
VOCAB_SIZE = 640

# Qwen3 convention: thinking is on unless enable_thinking is false; then the generation prompt carries an
# empty think block. In thinking mode the prompt already opens the block (as Qwen3-Thinking-2507 does), so
# the engine's per-request thinking_token_budget counts from the first generated token and the model
# always reasons. Earlier assistant turns are rendered without their thinking; a final assistant turn
# that is being continued (continue_final_message, no generation prompt) keeps it, so a gateway can
# close the thinking itself and let the model answer. Content may be a string
# or a list of OpenAI-style parts; image parts become one <image> placeholder (the processor expands it).
# Tools are presented the Hermes / Qwen3 way (a system block listing their JSON signatures, calls as
# <tool_call> JSON, results as <tool_response>), so vLLM's `hermes` tool parser reads the model's calls.
# Without tools, the prompt is exactly what the model was trained on.
TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_CODA = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, '
    '"arguments": <args-json-object>}\n</tool_call>'
)
CHAT_TEMPLATE = (
    "{%- if tools -%}{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0]['role'] == 'system' and messages[0]['content'] is string -%}"
    "{{- messages[0]['content'] + '\\n\\n' -}}{%- endif -%}"
    "{{- " + repr(TOOLS_PREAMBLE) + " -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- " + repr(TOOLS_CODA) + " + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (tools and loop.first and message['role'] == 'system' and message['content'] is string) -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- elif message['content'] is none -%}{%- set content = '' -%}"
    "{%- else -%}{%- set ns = namespace(c='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] in ['image', 'image_url'] -%}{%- set ns.c = ns.c + '<image>' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set ns.c = ns.c + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set content = ns.c -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' and '</think>' in content"
    " and (add_generation_prompt or not loop.last) -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}{%- endif -%}"
    "{%- set calls = namespace(c=content) -%}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{%- set function = call['function'] if call['function'] is defined else call -%}"
    "{%- set arguments = function['arguments'] if function['arguments'] is string"
    " else (function['arguments'] | tojson) -%}"
    "{%- set calls.c = calls.c + ('\\n' if calls.c else '') + '<tool_call>\\n{\"name\": \"'"
    " + function['name'] + '\", \"arguments\": ' + arguments + '}\\n</tool_call>' -%}{%- endfor -%}"
    "{%- set content = calls.c -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + content + '\\n</tool_response><|im_end|>\\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- else -%}{{- '<think>\\n' -}}{%- endif -%}{%- endif -%}"
)


def train_tokenizer(corpus: Iterable[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in (*THINK_TOKENS, *TOOL_TOKENS)])
    return tok


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[IMAGE, FAKE_IMAGE, END_OF_UTTERANCE],
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load(model_dir: Path) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(model_dir))
