"""The rater and admin pages (Jinja2, autoescaped: every data string is escaped)."""

from __future__ import annotations

import jinja2

STYLE = """
*{box-sizing:border-box}
body{font:16px/1.4 system-ui,sans-serif;margin:0;padding:8px 16px;color:#111;background:#fafafa}
header{max-width:1200px;margin:0 auto}
.q{margin:4px 0 6px;font-size:15px}
.bar{display:flex;align-items:center;gap:8px;font-size:13px;color:#444}
progress{flex:1;height:10px}
.stage{max-width:1200px;margin:8px auto;display:grid;gap:12px;
  grid-template-columns:minmax(0,1fr) minmax(0,1fr) minmax(0,1fr)}
figure{margin:0;text-align:center}
figcaption{font-size:13px;color:#444;margin-bottom:4px}
.set{display:grid;gap:4px;grid-template-columns:repeat(var(--cols,1),minmax(0,1fr))}
.set img,#cond{width:100%;max-height:62vh;object-fit:contain;display:block}
.set img{background:#eee}
.cand{border:3px solid #ccc;border-radius:8px;background:#fff;padding:6px;cursor:pointer;
  width:100%;font:inherit}
.cand:hover,.cand:focus{border-color:#2563eb;outline:none}
.key{display:block;margin-top:4px;font-size:14px}
.tie{display:block;margin:4px auto;padding:6px 16px;font:inherit}
.box{max-width:720px;margin:40px auto;background:#fff;padding:24px;border-radius:8px}
.start{display:inline-block;padding:10px 20px;background:#2563eb;color:#fff;border-radius:6px;
  text-decoration:none}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
@media (max-width:700px){
  body{padding:6px}
  .stage{grid-template-columns:1fr 1fr;gap:6px}
  .cond{grid-column:1 / span 2}
  #cond{max-height:26vh}
  .set img{max-height:34vh}
  .q{font-size:13px}
}
"""

BASE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{% block title %}Image variation study{% endblock %}</title>
<style nonce="{{ nonce }}">{{ style }}</style></head>
<body>{% block body %}{% endblock %}</body></html>
"""

START = """{% extends "base.html" %}{% block body %}
<div class="box" id="instructions"><h1>Image variation study</h1>
<p>{{ question }}</p>
<p>Choose with a click on the image you prefer, or with the left and right arrow keys{%
 if allow_tie %} (down arrow: no preference){% endif %}. There are {{ total }} comparisons;
you can close the page at any time and open the same link again to continue.</p>
<a class="start" id="start" href="/r/{{ token }}?start=1">Start</a></div>
{% endblock %}"""

TRIAL = """{% extends "base.html" %}{% block body %}
<header><p class="q" id="question">{{ question }}</p>
<div class="bar"><progress id="progress" value="{{ done }}" max="{{ total }}"></progress>
<span id="count">{{ done }} / {{ total }}</span></div></header>
<form method="post" action="/r/{{ token }}/vote" id="vote">
<input type="hidden" name="token" value="{{ token }}">
<input type="hidden" name="trial" value="{{ trial.id }}">
<input type="hidden" name="ms" id="ms" value="">
<div class="stage">
<figure class="cond"><figcaption>Example image: {{ trial.class_label }}</figcaption>
<img id="cond" src="/img/{{ token }}/{{ trial.cond_image }}" alt="example image"></figure>
{% for side in ("left", "right") %}
<button type="submit" name="choice" value="{{ side }}" id="{{ side }}" class="cand">
<div class="set" data-cols="{{ cols }}">{% for img in trial[side] %}
<img src="/img/{{ token }}/{{ img }}" alt="{{ side }} candidate">{% endfor %}</div>
<span class="key">{% if side == "left" %}&larr; {{ "Set 1 (left)" if cols > 1 else "Left" }}{%
 else %}{{ "Set 2 (right)" if cols > 1 else "Right" }} &rarr;{% endif %}</span>
</button>{% endfor %}
</div>
{% if allow_tie %}<button type="submit" name="choice" value="tie" id="tie" class="tie">
No preference (&darr;)</button>{% endif %}
</form>
<script nonce="{{ nonce }}">
(function () {
  var t0 = performance.now(), sent = false, form = document.getElementById("vote");
  document.querySelectorAll(".set").forEach(function (s) {
    s.style.setProperty("--cols", s.dataset.cols);
  });
  form.addEventListener("submit", function (e) {
    if (sent) { e.preventDefault(); return; }
    sent = true;
    document.getElementById("ms").value = String(Math.round(performance.now() - t0));
  });
  document.addEventListener("keydown", function (e) {
    var id = {ArrowLeft: "left", ArrowRight: "right", ArrowDown: "tie"}[e.key];
    var b = id && document.getElementById(id);
    if (b && !sent) { e.preventDefault(); form.requestSubmit(b); }
  });
})();
</script>
{% endblock %}"""

DONE = """{% extends "base.html" %}{% block body %}
<div class="box" id="thanks"><h1>Thank you!</h1>
<p>You made all {{ total }} comparisons. Your answers are saved; you can close this page.</p>
</div>{% endblock %}"""

MESSAGE = """{% extends "base.html" %}{% block body %}
<div class="box"><h1>{{ title }}</h1><p>{{ text }}</p></div>{% endblock %}"""

ADMIN = """{% extends "base.html" %}{% block title %}Study admin{% endblock %}{% block body %}
<h1>Study progress</h1>
<p>Protocol {{ info.protocol }}; systems: {{ systems|join(", ") }}; {{ n_votes }} votes.</p>
<table id="raters"><tr><th>rater</th><th>votes</th><th>assigned</th><th>checks seen</th>
<th>check failures</th><th>last vote (UTC)</th></tr>
{% for r in raters %}<tr><td>{{ r.id }}</td><td>{{ r.votes }}</td><td>{{ r.assigned }}</td>
<td>{{ r.checks }}</td><td>{{ r.failures }}</td><td>{{ r.last or "" }}</td></tr>{% endfor %}
</table>
<h2>Votes per system pair</h2>
<table id="pairs"><tr><th>left</th><th>right</th><th>votes</th></tr>
{% for p in pairs %}<tr><td>{{ p[0] }}</td><td>{{ p[1] }}</td><td>{{ p[2] }}</td></tr>{% endfor %}
</table>{% endblock %}"""

ENV = jinja2.Environment(
    loader=jinja2.DictLoader(
        {
            "base.html": BASE,
            "start.html": START,
            "trial.html": TRIAL,
            "done.html": DONE,
            "message.html": MESSAGE,
            "admin.html": ADMIN,
        }  # fmt: skip
    ),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def render(name: str, **context) -> str:
    """One page, every value escaped."""
    return ENV.get_template(name).render(style=STYLE, **context)
