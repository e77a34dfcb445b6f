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
.cand[disabled]{cursor:progress;opacity:.75}
.wait{font-size:13px;color:#444;text-align:center;margin:2px}
.code{font:700 22px/1.2 ui-monospace,monospace;background:#eef2ff;padding:6px 10px;
  border-radius:6px;display:inline-block;user-select:all}
.fb{padding:8px 12px;border-radius:6px}.ok{background:#dcfce7}.bad{background:#fee2e2}
.consent{white-space:pre-wrap;max-height:50vh;overflow:auto;border:1px solid #ddd;padding:8px}
label{display:block;margin:8px 0}
.tag{display:inline-block;background:#fef3c7;border-radius:4px;padding:1px 6px;font-size:13px}
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
<meta name="referrer" content="same-origin">{% block head %}{% endblock %}
<title>{% block title %}Image variation study{% endblock %}</title>
<style nonce="{{ nonce }}">{{ style }}</style></head>
<body>{% block body %}{% endblock %}</body></html>
"""

START = """{% extends "base.html" %}{% block body %}
<div class="box" id="instructions"><h1>Image variation study</h1>
<p>{{ question }}</p>
<p>Choose with a click on the image you prefer, or with the left and right arrow keys{%
 if allow_tie %} (down arrow: no preference){% endif %}. The buttons work once all the images
have loaded.</p>
<p id="duration">{% if practice %}First {{ practice }} practice comparisons with feedback, then
{% endif %}{{ total }} comparisons: about {{ minutes }} minute{{ "s" if minutes != 1 }}.
Some comparisons check attention (one side is obviously broken); a few come twice.
You can close the page and open the same link again to continue.</p>
{% if preview %}<p class="tag" id="preview">Preview: accept the task to start.</p>{% else %}
<a class="start" id="start" href="{{ root }}/r/{{ token }}?start=1">Start</a>{% endif %}</div>
{% endblock %}"""

TRIAL = """{% extends "base.html" %}{% block body %}
<header><p class="q" id="question">{% if trial.kind == "practice" %}<span class="tag">Practice
</span> {% endif %}{{ question }}</p>
<div class="bar"><progress id="progress" value="{{ done }}" max="{{ total }}"></progress>
<span id="count">{{ done }} / {{ total }}</span></div></header>
<form method="post" action="{{ root }}/r/{{ token }}/vote" id="vote">
<input type="hidden" name="token" value="{{ token }}">
<input type="hidden" name="trial" value="{{ trial.id }}">
<input type="hidden" name="ms" id="ms" value="">
<div class="stage">
<figure class="cond"><figcaption>Example image: {{ trial.class_label }}</figcaption>
<img id="cond" src="{{ root }}/img/{{ token }}/{{ trial.cond_image }}" alt="example image"></figure>
{% for side in ("left", "right") %}
<button type="submit" name="choice" value="{{ side }}" id="{{ side }}" class="cand" disabled>
<div class="set" data-cols="{{ cols }}">{% for img in trial[side] %}
<img src="{{ root }}/img/{{ token }}/{{ img }}" alt="{{ side }} candidate">{% endfor %}</div>
<span class="key">{% if side == "left" %}&larr; {{ "Set 1 (left)" if cols > 1 else "Left" }}{%
 else %}{{ "Set 2 (right)" if cols > 1 else "Right" }} &rarr;{% endif %}</span>
</button>{% endfor %}
</div>
{% if allow_tie %}<button type="submit" name="choice" value="tie" id="tie" class="tie" disabled>
No preference (&darr;)</button>{% endif %}
<p class="wait" id="wait">Loading the images&hellip;</p>
</form>
<script nonce="{{ nonce }}">
(function () {
  var t0 = null, sent = false, form = document.getElementById("vote");
  var imgs = Array.prototype.slice.call(document.querySelectorAll(".stage img"));
  var buttons = document.querySelectorAll("#vote button");
  document.querySelectorAll(".set").forEach(function (s) {
    s.style.setProperty("--cols", s.dataset.cols);
  });
  function ready() {  /* vote time counts from the moment every image has loaded */
    if (t0 !== null) return;
    if (!imgs.every(function (i) { return i.complete && i.naturalWidth > 0; })) return;
    t0 = performance.now();
    buttons.forEach(function (b) { b.disabled = false; });
    document.getElementById("wait").textContent = "";
    document.body.dataset.ready = "1";
  }
  imgs.forEach(function (i) {
    i.addEventListener("load", ready);
    i.addEventListener("error", function () {
      document.getElementById("wait").textContent = "An image did not load: reload the page.";
    });
  });
  ready();
  form.addEventListener("submit", function (e) {
    if (sent || t0 === null) { e.preventDefault(); return; }
    sent = true;
    document.getElementById("ms").value = String(Math.round(performance.now() - t0));
  });
  document.addEventListener("keydown", function (e) {
    var id = {ArrowLeft: "left", ArrowRight: "right", ArrowDown: "tie"}[e.key];
    var b = id && document.getElementById(id);
    if (b && !sent && t0 !== null) { e.preventDefault(); form.requestSubmit(b); }
  });
})();
</script>
{% endblock %}"""

FEEDBACK = """{% extends "base.html" %}{% block body %}
<div class="box" id="feedback"><h1>Practice</h1>
{% if correct %}<p class="fb ok" id="correct">Correct: the {{ expected }} image is the better
variation; the other one is scrambled.</p>{% else %}<p class="fb bad" id="wrong">Not quite: the
{{ expected }} image is the better variation; the other one is scrambled. Some real
comparisons are like this one and check attention.</p>{% endif %}
<a class="start" id="continue" href="{{ root }}/r/{{ token }}?start=1">Continue</a></div>
{% endblock %}"""

CONSENT = """{% extends "base.html" %}{% block body %}
<div class="box" id="consent-page"><h1>Consent</h1>
<div class="consent" id="consent-text">{{ consent }}</div>
<form method="post" action="{{ root }}/r/{{ token }}/consent">
<input type="hidden" name="token" value="{{ token }}">
<label><input type="checkbox" name="agree" value="yes" id="agree"> I have read the above and
agree to take part.</label>
<button type="submit" name="decision" value="agree" id="consent-yes" class="start">Continue
</button> <button type="submit" name="decision" value="decline" id="consent-no">I do not
agree</button>{% if error %}<p class="fb bad" id="error">{{ error }}</p>{% endif %}
</form></div>{% endblock %}"""

QUESTIONS = """{% extends "base.html" %}{% block body %}
<div class="box" id="questions"><h1>A few questions</h1>
<form method="post" action="{{ root }}/r/{{ token }}/answers">
<input type="hidden" name="token" value="{{ token }}">
{% for q in questions %}<label for="q-{{ q.id }}">{{ q.text }}</label>
{% if q.type == "choice" %}<select name="{{ q.id }}" id="q-{{ q.id }}"><option value=""></option>
{% for o in q.options %}<option>{{ o }}</option>{% endfor %}</select>
{% elif q.type == "number" %}<input type="number" step="any" name="{{ q.id }}" id="q-{{ q.id }}">
{% else %}<input type="text" maxlength="500" name="{{ q.id }}" id="q-{{ q.id }}">{% endif %}
{% endfor %}
{% if error %}<p class="fb bad" id="error">{{ error }}</p>{% endif %}
<p><button type="submit" class="start" id="answers-send">Continue</button></p>
</form></div>{% endblock %}"""

DONE = """{% extends "base.html" %}{% block head %}{% if redirect %}
<meta http-equiv="refresh" content="{{ delay }};url={{ redirect }}">{% endif %}{% endblock %}
{% block body %}
<div class="box" id="{{ 'screenout' if screened else 'thanks' }}">
<h1>{{ "Thank you for your time" if screened else "Thank you!" }}</h1>
<p>{{ text }}</p>
{% if code %}<p>Your {{ "screen-out" if screened else "completion" }} code:
<span class="code" id="code">{{ code }}</span></p>{% endif %}
{% if mturk %}<form method="post" action="{{ mturk.url }}" id="mturk">
<input type="hidden" name="assignmentId" value="{{ mturk.assignment }}">
<input type="hidden" name="outcome" value="{{ 'screened_out' if screened else 'completed' }}">
<input type="hidden" name="code" value="{{ code }}">
<button type="submit" class="start" id="submit-hit">Submit the task</button></form>
<script nonce="{{ nonce }}">document.getElementById("mturk").submit();</script>
{% elif redirect %}<p id="redirect">Taking you back in {{ delay }} seconds&hellip;
<a href="{{ redirect }}" id="redirect-link">continue now</a></p>
{% else %}<p>Your answers are saved; you can close this page.</p>{% endif %}
</div>{% endblock %}"""

MESSAGE = """{% extends "base.html" %}{% block body %}
<div class="box"><h1>{{ title }}</h1><p>{{ text }}</p></div>{% endblock %}"""

ADMIN = """{% extends "base.html" %}{% block title %}Study admin{% endblock %}{% block body %}
<h1>Study progress</h1>
<p>Protocol {{ info.protocol }}; systems: {{ systems|join(", ") }}; {{ n_votes }} votes{%
 if closed %}; <b>closed</b>{% endif %}.</p>
<h2>Slices</h2>
<table id="slices"><tr><th>slice</th><th>planned</th><th>finished</th><th>active</th></tr>
{% for s in cover %}<tr><td>{{ s[0] }}</td><td>{{ s[1] }}</td><td>{{ s[2] }}</td>
<td>{{ s[3] }}</td></tr>{% endfor %}</table>
<h2>Raters</h2>
<table id="raters"><tr><th>rater</th><th>external id</th><th>status</th><th>votes</th>
<th>checks seen</th><th>check failures</th><th>last vote (UTC)</th></tr>
{% for r in raters %}<tr><td>{{ r.id }}</td><td>{{ r.external_id }}</td><td>{{ r.status }}</td>
<td>{{ r.votes }}</td><td>{{ r.checks }}</td><td>{{ r.failures }}</td><td>{{ r.last or "" }}</td>
</tr>{% endfor %}
</table>
<h2>Main votes per system pair</h2>
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
            "feedback.html": FEEDBACK,
            "consent.html": CONSENT,
            "questions.html": QUESTIONS,
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
