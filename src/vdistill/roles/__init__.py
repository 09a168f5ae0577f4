"""The networks a distillation trains beside its student: the discriminator of adversarial alignment, the fake score
network of distribution matching (DMD2), and the EMA weights of a consistency target."""
