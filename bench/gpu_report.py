"""The short table bench/gpu_bench.py prints last, with the targets it holds the figures to."""

TARGET_FROM_LABELS = 0.9  # x ceiling (ResNet-50 @ 224)
TARGET_ON_THE_FLY = 0.8  # x cripser-only floor
TARGET_PRECOMPUTE = 0.75  # x cripser-only floor


def format_summary(data):
    """The short table printed last."""
    lines = [f"{data['device_name']}, {data['cores']} cores, {data['date']}"]
    st = data['stages']
    ceil = st.get('ceiling', {})
    for arch, r in ceil.items():
        lines.append(f"  ceiling {arch:34s} {r['img_s']:8.0f} img/s")
    pipe = st.get('pipeline', {})
    if 'cripser_floor' in pipe and 'label_precompute_vs_floor' in pipe:
        fl = pipe['cripser_floor']
        lines.append(f"  cripser-only floor {'':23s} {fl['floor_img_s']:8.0f} img/s")
        lines.append(
            f"  PH label precompute {'':22s} {pipe['label_precompute_img_s']:8.0f} img/s = "
            f"{pipe['label_precompute_vs_floor']:.2f}x floor (target >= {TARGET_PRECOMPUTE})"
        )
    if 'from_labels_loader_only' in pipe:
        lines.append(f"  loader alone, from labels {'':15s} {pipe['from_labels_loader_only']['img_s']:8.0f} img/s")
    for key, r in pipe.items():
        if isinstance(r, dict) and 'vs_ceiling' in r:  # the training runs
            s = f"  {key:41s} {r['img_s']:8.0f} img/s"
            if r.get('vs_ceiling'):
                target = f" (target >= {TARGET_FROM_LABELS})" if key == 'from_labels_resnet50' else ''
                s += f" = {r['vs_ceiling']:.2f}x ceiling{target}"
            if 'vs_floor' in r:
                s += f", {r['vs_floor']:.2f}x floor (target >= {TARGET_ON_THE_FLY})"
            lines.append(s)
    acc = st.get('accuracy', {})
    if 'summary' in acc:
        lines.append("  digits top-1 % (mean +- sd over seeds): labels/class | scratch | PH-pretrained | random-target")
        for k, row in acc['summary'].items():
            cells = ' | '.join(
                f"{row[n]['mean']:5.1f} +- {row[n]['std']:4.1f}" for n in ('scratch', 'ph', 'random') if n in row
            )
            lines.append(f"    {k:>4s} | {cells}")
    return '\n'.join(lines)
