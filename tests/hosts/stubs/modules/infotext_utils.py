"""A1111 c8a5322d ``modules/infotext_utils.py``: how infotext is written, parsed and pasted into controls."""

import json
import re

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def create_infotext(p):
    """The last lines of processing.create_infotext: prompt, negative prompt, then ``Key: value`` pairs."""
    generation_params = {"Steps": p.steps, "CFG scale": p.cfg_scale, "Seed": p.seed,
                         "Size": f"{p.width}x{p.height}", **p.extra_generation_params}
    text = ", ".join(f"{k}: {quote(v)}" for k, v in generation_params.items() if v is not None)
    negative = f"\nNegative prompt: {p.negative_prompt}" if p.negative_prompt else ""
    return f"{p.prompt}{negative}\n{text}".strip()


def parse_generation_parameters(x: str):
    res = {}
    prompt, negative_prompt = "", ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for k, v in re_param.findall(lastline):
        res[k] = unquote(v)
    from modules import script_callbacks

    script_callbacks.infotext_pasted_callback(x, res)
    return res


def paste_values(paste_fields, params):
    """What connect_paste's ``paste_func`` returns for each component: a value, or ``None`` for "no update"."""
    out = []
    for output, key in paste_fields:
        if callable(key):
            v = key(params)
        else:
            v = params.get(key, None)
        if v is None:
            out.append(None)
            continue
        valtype = type(output.value)
        if valtype == bool and v == "False":
            val = False
        elif valtype == int:
            val = float(v)
        else:
            val = valtype(v)
        out.append(val)
    return out
