"""Chat templates: the GGUF's `tokenizer.chat_template` (or a file) rendered in a sandboxed Jinja
environment; built-in templates for GGUFs that carry none (Gemma 3 270M)."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import SvdqError

# Gemma's turn format: system text folded into the first user turn, roles user/model.
GEMMA_TEMPLATE = """{{ bos_token }}
{%- set ns = namespace(system='') -%}
{%- for m in messages -%}
{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] + '\n\n' -%}
{%- else -%}
<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}
{{ (ns.system if loop.index0 <= 1 and m['role'] == 'user' else '') + m['content'] | trim }}<end_of_turn>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}<start_of_turn>model
{% endif -%}"""

CHATML_TEMPLATE = """{%- for m in messages -%}
<|im_start|>{{ m['role'] }}
{{ m['content'] }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}"""

LLAMA3_TEMPLATE = """{{ bos_token }}{%- for m in messages -%}
<|start_header_id|>{{ m['role'] }}<|end_header_id|>

{{ m['content'] | trim }}<|eot_id|>
{%- endfor -%}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif -%}"""

BUILTIN = {"gemma": GEMMA_TEMPLATE, "chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE}


def _raise(msg):
    raise jinja2.exceptions.TemplateError(msg)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", name: str = "gguf"):
        self.name = name
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise SvdqError(f"chat template {name}: {e}") from None
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token, tools=None)
        except jinja2.TemplateError as e:
            raise SvdqError(f"chat template {self.name}: {e}") from None


def pick_template(gguf_template: str | None, arch: str, vocab_has, bos: str, eos: str,
                  override_file: str | None = None) -> ChatTemplate:
    """The --chat-template-file if given, else the GGUF's template, else a built-in by vocabulary."""
    if override_file:
        p = Path(override_file)
        try:
            src = p.read_text(encoding="utf-8")
        except OSError as e:
            raise SvdqError(f"--chat-template-file {p}: {e.strerror}") from None
        return ChatTemplate(src, bos, eos, name=str(p))
    if gguf_template:
        return ChatTemplate(gguf_template, bos, eos, name="from GGUF")
    if vocab_has("<start_of_turn>"):
        return ChatTemplate(GEMMA_TEMPLATE, bos, eos, name="builtin:gemma")
    if vocab_has("<|im_start|>"):
        return ChatTemplate(CHATML_TEMPLATE, bos, eos, name="builtin:chatml")
    if vocab_has("<|start_header_id|>"):
        return ChatTemplate(LLAMA3_TEMPLATE, bos, eos, name="builtin:llama3")
    return ChatTemplate(CHATML_TEMPLATE, bos, eos, name="builtin:chatml")
