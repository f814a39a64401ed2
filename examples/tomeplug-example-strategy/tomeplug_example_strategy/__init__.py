"""An example tomeplug strategy plugin: ``pool2x2``, adaptive 2x2 average pooling with unpooling."""
