"""`onnxplain audit`: explanations of a folder scored for faithfulness, localisation, sanity and drift, with CI
thresholds; the work is onnxplain.audit."""
from __future__ import annotations

from pathlib import Path

import click

from .common import HELP, Command, cli_quiet, model_options, param_option


@click.command("audit", cls=Command, context_settings=HELP)
@click.argument("model", type=click.Path())
@click.argument("images", type=click.Path())
@click.option("--methods", "-m", default="grad-cam", show_default=True, help="Method names, comma separated.")
@click.option("--compare", type=click.Path(), default=None,
              help="A second model file (e.g. its int8 quantisation): prediction and map drift.")
@click.option("--boxes", type=click.Path(), default=None,
              help='JSON {"image.jpg": [[x1, y1, x2, y2], ...]} in original pixels: the pointing game.')
@click.option("--out", "out_dir", default="onnxplain-audit", show_default=True, type=click.Path(),
              help="Folder for audit.html and audit.json.")
@click.option("--fail-under", multiple=True, metavar="METRIC[:METHOD]=VALUE",
              help="Exit 1 when a higher-is-better metric is below VALUE (insertion, pointing, sanity, "
                   "top1_agreement, top5_overlap, drift_spearman). Repeatable.")
@click.option("--fail-over", multiple=True, metavar="METRIC[:METHOD]=VALUE",
              help="Exit 1 when a lower-is-better metric is above VALUE (deletion, sanity_spearman, sanity_ssim).")
@click.option("--limit", type=int, default=None, help="Audit only the first N images (sorted by path).")
@click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")
@param_option("rise:n=1000", metavar="METHOD:KEY=VALUE")
@click.option("--steps", default=32, show_default=True, help="Deletion/insertion steps.")
@click.option("--score", type=click.Choice(["probability", "logit"]), default="probability", show_default=True,
              help="What deletion/insertion follow: the target's softmax probability or its logit.")
@click.option("--deletion-baseline", type=click.Choice(["zero", "black", "blur"]), default="zero",
              show_default=True, help="zero = zeros in model space; black = a black image; blur = blurred image.")
@click.option("--insertion-baseline", type=click.Choice(["zero", "black", "blur"]), default="blur",
              show_default=True)
@click.option("--tolerance", default=15.0, show_default=True, help="Pointing-game tolerance in pixels.")
@click.option("--sanity/--no-sanity", default=True, show_default=True,
              help="Run the randomisation sanity check.")
@click.option("--sanity-images", default=1, show_default=True,
              help="Images the sanity check uses (each costs a forward per randomised model and method).")
@click.option("--sanity-steps", default=2, show_default=True,
              help="Cascade depths (and single layers) the sanity check evaluates, spread over the weight layers.")
@click.pass_context
@model_options()
def audit_command(ctx, model, images, methods, compare, boxes, out_dir, fail_under, fail_over, limit, layer,
                  param, steps, score, deletion_baseline, insertion_baseline, tolerance, sanity, sanity_images,
                  sanity_steps, models):
    """Audit MODEL's explanations on IMAGES (a folder, recursive; a .csv/.jsonl/.parquet manifest with a `path`
    column; or one image): deletion/insertion AUC, pointing game, randomisation sanity check and drift
    against a second model; one self-contained audit.html plus audit.json. The cost in forward passes is
    printed first (unless --quiet); each image is appended to a log as it is done.

    Exit codes: 0 all thresholds met, 1 a --fail-under/--fail-over threshold violated, 2 a usage error,
    130 interrupted (the partial report is written).
    """
    from ..audit import AuditOptions, format_summary, parse_method_params, parse_threshold, run_audit
    from ..errors import UserError
    thresholds = [parse_threshold(t, "under") for t in fail_under] + [parse_threshold(t, "over") for t in fail_over]
    names = tuple(dict.fromkeys(m.strip() for m in methods.split(",") if m.strip()))
    if not names:
        raise UserError("--methods names no method; write e.g. --methods grad-cam,score-cam.")
    options = AuditOptions(methods=names, layer=layer, params=parse_method_params(param, names), steps=steps,
                           probability=score == "probability", deletion_baseline=deletion_baseline,
                           insertion_baseline=insertion_baseline, tolerance=tolerance, sanity=sanity,
                           sanity_images=sanity_images, sanity_steps=sanity_steps)
    out = Path(out_dir)
    try:
        report = run_audit(model, images, out, options, compare=compare, boxes=boxes, thresholds=thresholds,
                           preset=models.preset, labels=models.labels, device=models.device, limit=limit,
                           quiet=cli_quiet(), explainer_options=models.explainer_options())
    except KeyboardInterrupt:
        click.echo(f"interrupted: the partial report is in {out / 'audit.html'}", err=True)
        ctx.exit(130)
    click.echo(format_summary(report))
    click.echo(f"report: {out / 'audit.html'}  data: {out / 'audit.json'}")
    if report["violations"]:
        for line in report["violations"]:
            click.echo(f"FAIL {line}")
        ctx.exit(1)
