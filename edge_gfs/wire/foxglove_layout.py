"""The Foxglove layout shipped as docs/foxglove-layout.json, built with the SDK's own layout classes.

Why generated and not hand-written: the layout names the topics of wire/foxglove_msgs.py, and a test compares
the file with this function, so a renamed topic cannot leave a layout that shows empty panels. Regenerate with

    python -m edge_gfs.wire.foxglove_layout > docs/foxglove-layout.json

What a person sees: the camera frame with the label colours over it (the Image panel's overlay topic, half
opacity) and the plain colour map beside it, both with the legend of the classes in view drawn on them
(/labels/legend, ImageAnnotations); below, the class table (the legend: ids, names, colours, kinds,
shots), the teach/forget events, and fps/latency plotted from the status.
"""

from __future__ import annotations

from edge_gfs.wire import foxglove_msgs as F


def layout_json() -> str:
    F.require()
    import foxglove.layouts as fl

    def image(topic: str, title: str, overlay: str | None = None):
        overlays = None if overlay is None else [fl.ImageOverlayTopicConfig(
            id="labels", topic=overlay, schema_name="foxglove.RawImage", visible=True, opacity=0.5,
            blend_mode="alpha")]
        return fl.ImagePanel(title=title, config=fl.ImageConfig(image_mode=fl.ImageModeConfig(
            image_topic=topic, overlay_topics=overlays,
            annotations={F.TOPIC_LEGEND: fl.ImageAnnotationSettings(visible=True)})))

    top = fl.SplitContainer(direction="row", items=[
        fl.SplitItem(proportion=1, content=image(F.TOPIC_IMAGE, "frame + labels", F.TOPIC_COLOR)),
        fl.SplitItem(proportion=1, content=image(F.TOPIC_COLOR, "labels")),
    ])
    bottom = fl.SplitContainer(direction="row", items=[
        fl.SplitItem(proportion=2, content=fl.TablePanel(
            title="classes (legend)", config=fl.TableConfig(topic_path=f"{F.TOPIC_CLASSES}.classes"))),
        fl.SplitItem(proportion=1, content=fl.RawMessagesPanel(
            title="teach / forget", config=fl.RawMessagesConfig(topic_path=F.TOPIC_EVENTS))),
        fl.SplitItem(proportion=2, content=fl.PlotPanel(title="fps, latency", config=fl.PlotConfig(paths=[
            fl.PlotSeries(value=f"{F.TOPIC_STATUS}.fps", label="fps"),
            fl.PlotSeries(value=f"{F.TOPIC_STATUS}.latency_p50_ms", label="latency p50 ms")]))),
    ])
    layout = fl.Layout(content=fl.SplitContainer(direction="column", items=[
        fl.SplitItem(proportion=3, content=top), fl.SplitItem(proportion=1, content=bottom)]))
    return layout.to_json()


if __name__ == "__main__":
    import json
    print(json.dumps(json.loads(layout_json()), indent=2))
