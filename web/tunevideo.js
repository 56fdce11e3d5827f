// TuneVideo frontend extension: a freshly added tuning node starts with its seed control on "fixed".
// The frontend gives every widget named "seed" a control that defaults to "randomize", which would re-run a
// 500-step tuning on every Queue. Only new nodes are touched: a loaded workflow's saved value is applied after
// nodeCreated and wins.
import { app } from "../../scripts/app.js";

const TUNING_NODES = new Set(["OneShotTune", "SpatialTemporalLoRATrain", "DreamixFinetune"]);

app.registerExtension({
  name: "TuneVideo.FixedTuningSeed",
  nodeCreated(node) {
    if (!TUNING_NODES.has(node.comfyClass)) return;
    const seed = node.widgets?.find((w) => w.name === "seed");
    for (const control of seed?.linkedWidgets ?? []) {
      control.value = "fixed";
    }
  },
});
