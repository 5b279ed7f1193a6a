import nnshift as ns

base = ns.zoo.load("shapes-base")  # or ns.load("llava-hf/llava-1.5-7b-hf", dtype="auto", device_map="auto")
ft = ns.zoo.load("shapes-colors")  # or ns.load(base_path, lora="path/to/adapter")
captions = ns.zoo.dataset(120, style="generic", task="caption", seed=0)

# 1-3. capture the state that says "circle" in both models' captions, learn concepts, measure the shift
toi = ns.positions.token_of_interest("circle")
acts_a = ns.capture(base, captions, layer=-1, at=toi)
acts_b = ns.capture(ft, acts_a.samples, layer=-1, at=toi)
acts_a, acts_b = ns.pair(acts_a, acts_b)
dico_a = ns.concepts.fit(acts_a, k=6, method="kmeans", seed=0)
dico_b = ns.concepts.fit(acts_b, k=6, method="kmeans", seed=0)
report = ns.shift.analyze(acts_a, acts_b, dico_a, dico_b, alpha=1.0, vlm=base)
print(report)

# 4. steer: a coarse vector from yes/no questions to number questions, at layer 3
yesno = ns.zoo.dataset(60, task="vqa", answer_type="yes/no", seed=1)
number = ns.zoo.dataset(60, task="vqa", answer_type="number", seed=2)
source = ns.capture(base, yesno, layer=3, at="last_prompt")
target = ns.capture(base, number, layer=3, at="last_prompt")
vec = ns.steering.coarse(source, target)

# its strength: the best on half of 200 mixed questions that costs the other answer types <= 2 points
# (max_untouched_drop=0.02), then measured on the other half
mixed = ns.zoo.dataset(200, task="vqa", seed=4)
goal = ns.steering.AnswerTypeTarget("yes/no", "number")
cal = ns.steering.calibrate(base, vec, mixed, target=goal, alphas=[1.0, 1.25, 1.5, 2.0], max_new_tokens=4)
print(cal.summary())
patch = cal.patch

questions = ns.zoo.dataset(4, task="vqa", answer_type="yes/no", seed=3)
before = ns.generate(base, questions, max_new_tokens=4)
after = ns.steer(base, questions, patch, max_new_tokens=4)
for q, b, a in zip(questions, before, after, strict=True):
    print(f"{q.prompt!r}: {b!r} -> {a!r}")

# a patch also works inside your own nnsight generation
inputs = base.prepare(questions)
with base.model.generate(inputs, max_new_tokens=4) as tracer:
    patch(base, inputs=inputs)
    out = tracer.result.save()
print(base.decode(out[0, inputs["input_ids"].shape[1] :]))
